"""One module per stage: its declaration (`STAGE`: doc, config keys, inputs, the files it writes) and
the reader functions through which other stages and tools read its entry. Torch-free, so building
the task list never imports the training stack; each stage's work is in the module `STAGE.module`.
"""
ORDER = ("data", "train", "export", "library", "verify", "firmware", "emulate", "report")
