"""t2l_vllm."""
