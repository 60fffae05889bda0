from trainkit.cli import main

raise SystemExit(main())
