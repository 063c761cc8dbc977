"""``python -m amphora.ctl``: the same as the ``amphora-ctl`` console script."""

from amphora.ctl import main

main()
