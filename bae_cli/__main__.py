from bae_cli.app import main

main()
