import sys

from lane.cli.main import main

sys.exit(main())
