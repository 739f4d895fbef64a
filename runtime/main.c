// main.c: the entente binary.
#include "ent_runtime.h"

int main(int argc, char **argv) { return ent_cli_main(argc, argv); }
