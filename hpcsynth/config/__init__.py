"""Config: YAML in configs/ -> frozen, typed objects, checked key by key.

Sits before everything else in the flow: `plan` loads a config file, resolves it and writes it into the
run directory with its fingerprint; later stages read the resolved copy from there, never the original.
sections.py holds the dataclasses, load.py reads YAML and fingerprints, checks.py checks values.
"""

from hpcsynth.config.load import (FINGERPRINTED, MAX_RUN_YAML_BYTES, MAX_YAML_BYTES, config_from_dict,  # noqa: F401
                                  config_to_dict, diff_configs, diff_payloads, fingerprint,
                                  fingerprint_payload, load_config, read_yaml)
from hpcsynth.config.sections import *  # noqa: F401,F403
