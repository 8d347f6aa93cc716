from draco.cli import main

raise SystemExit(main())
