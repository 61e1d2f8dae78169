"""`python -m ml.deploy manifest gen|validate` and `python -m ml.deploy deploy`, as under `python -m ml`."""

from ml.deploy.cli import main

raise SystemExit(main())
