"""`python -m upparat.emulator`: see upparat.emulator.cli."""

from upparat.emulator.cli import main

raise SystemExit(main())
