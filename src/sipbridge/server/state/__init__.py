"""What the server keeps: the rooms' runtime, the call log, the cache of trunks and dispatch
rules."""
