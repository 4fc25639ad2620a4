import sys

from vipwire.cli.main import main

sys.exit(main())
