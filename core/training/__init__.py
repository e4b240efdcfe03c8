"""The training run that train.py calls, `loop.train(config)`: its configuration (`config`), what it
starts from (`inputs`), its setup (`run`), the steps, saves and stops (`loop`); state files, RNG and
signals (`state`), devices and processes (`distributed`), the resumable data stream (`data`), the
optimisation step (`step`), the training stages (`stages`), validation (`validation`) and the run
log (`log`)."""
