from ordersync.cli import main

raise SystemExit(main())
