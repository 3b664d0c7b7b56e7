"""The lab: how long can a recurrent cell remember, and what do its cells remember?

`memorize` trains one model until it recites one text and measures its recall (the seed
notebook's experiment, reproducible); `capacity` sweeps it over cells x sizes x lengths.
`cells` (cells.py, with features, record, probe, ngram and report) finds the units of a
trained run that track the structure of a text, and compares the run with n-gram models.
The lab sits on the top library layer beside serve/: it imports the models, the data layer,
the run directory (checkpoint) and the base modules, and nothing imports it but the CLI.
"""
