from relay.cli import relayd_main

relayd_main()
