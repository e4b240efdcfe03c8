"""What train.py is made of: state files, RNG and signals (`state`), devices and processes
(`distributed`), the resumable data stream (`data`), the optimisation step (`step`), the
training stages (`stages`), validation (`validation`) and the run log (`log`)."""
