"""Helpers the tests share and a user may run: tiny real models of every supported family."""
