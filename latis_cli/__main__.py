from latis_cli import main

main()
