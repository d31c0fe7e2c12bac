"""Test helpers: shared micro tasks and the scripts and callbacks that tests launch in subprocesses."""
