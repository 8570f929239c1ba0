"""`python -m neuronxa_ray.cli`: the same as the `neuronxa-ray` command."""

import sys

from neuronxa_ray.cli.main import main

sys.exit(main())
