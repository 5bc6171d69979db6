"""The ``histdata`` sub-commands, one module each, named after the command (see
``histdata.cli``); ``import_`` is ``histdata import``, as ``import`` is a Python keyword."""
