from modelopt_typed_recipes.cli import main

raise SystemExit(main())
