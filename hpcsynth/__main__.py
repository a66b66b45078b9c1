from hpcsynth.cli.main import main

raise SystemExit(main())
