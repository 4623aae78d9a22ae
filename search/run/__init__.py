"""Running a search: Ray session, pre-Ray checks, Tuner, trainable, outer stage, console, lifecycle."""
