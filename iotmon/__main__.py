from iotmon.cli import main

main()
