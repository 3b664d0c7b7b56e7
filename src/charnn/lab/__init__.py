"""The memorisation lab: how long a text can a recurrent cell learn to recite?

`memorize` trains one model until it recites one text and measures its recall (the seed
notebook's experiment, reproducible); `capacity` sweeps it over cells x sizes x lengths.
The lab sits on the top library layer beside serve/: it imports the models, the data layer
and the base modules (errors, files, settings), and nothing imports it but the CLI.
"""
