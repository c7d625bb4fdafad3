import sys

from master.main import main

sys.exit(main())
