from unifs.cli import main

main()
