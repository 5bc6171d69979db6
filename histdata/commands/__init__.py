"""The ``histdata`` sub-commands, one module each (see ``histdata.cli``)."""
