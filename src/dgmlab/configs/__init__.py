"""The bundled run configurations (TOML), shipped inside the package: ``dgmlab configs`` lists them and
``dgmlab train --config NAME`` finds one by name (:func:`dgmlab.config.bundled_config`)."""
