import sys

from pretrain_bench.cli import main

sys.exit(main())
