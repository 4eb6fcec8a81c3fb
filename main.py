"""python main.py: the `maxl-tf` command (maxl_tf/main.py) from a clone, without installing it."""

from maxl_tf import main

if __name__ == "__main__":
    main.run()
