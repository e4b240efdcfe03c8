"""What train.py is made of: state files and RNG (`state`), devices and processes
(`distributed`), the resumable data stream (`data`) and the run log (`log`)."""
