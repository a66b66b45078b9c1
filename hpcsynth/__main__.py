from hpcsynth.cli.app import main

raise SystemExit(main())
