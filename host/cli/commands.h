/* commands.h - subcommands of the paraserve binary.  Each takes the
 * arguments after its name (argv[0] = subcommand name) and returns the
 * process exit status (0 ok, 1 runtime error, 2 usage error). */
#ifndef PS_COMMANDS_H
#define PS_COMMANDS_H

int cmd_generate(int argc, char **argv);
int cmd_mkmodel(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_orchestrate(int argc, char **argv);
int cmd_serve(int argc, char **argv);

#endif /* PS_COMMANDS_H */
