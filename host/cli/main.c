/* main.c - the paraserve binary: dispatch to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "orchestrator/json_alloc.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    { "generate", cmd_generate, "generate text from a prompt with a GGUF model" },
    { "mkmodel",  cmd_mkmodel,  "write a GGUF model with deterministic random weights" },
    { "bench",    cmd_bench,    "measure prefill and batched decode throughput" },
    { "orchestrate", cmd_orchestrate, "run scripted tasks through the agent executor, print events as JSON lines" },
    { "serve",    cmd_serve,    "OpenAI-compatible HTTP server with continuous batching" },
};

static void usage(FILE *out)
{
    fprintf(out, "usage: paraserve <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'paraserve <command> --help' describes a command's options.\n");
}

int main(int argc, char **argv)
{
    json_alloc_install();      /* cJSON's allocator, before any thread could use cJSON */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "paraserve: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
