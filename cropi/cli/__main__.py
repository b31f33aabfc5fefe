from cropi.cli import main

main()
