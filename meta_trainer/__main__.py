import sys

from meta_trainer.main import main

sys.exit(main())
