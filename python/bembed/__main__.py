"""`python -m bembed ...` (what `torchrun -m bembed ...` runs)."""

from bembed.cli import main

raise SystemExit(main())
