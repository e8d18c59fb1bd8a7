import sys

from mushu_cli import main

sys.exit(main())
