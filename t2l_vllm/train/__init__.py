"""Training hypernetworks and the CPU-sized toy world they are trained and measured on."""
