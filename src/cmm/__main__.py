from cmm.cli import main

main()
