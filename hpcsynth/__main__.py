from hpcsynth.cli import main

raise SystemExit(main())
