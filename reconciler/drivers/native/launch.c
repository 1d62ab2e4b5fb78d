/*
 * sprites-launch: run a command that the kernel kills when the thread that
 * started it dies.
 *
 *   sprites-launch COMMAND [ARG...]
 *
 * Sets PR_SET_PDEATHSIG to SIGKILL, checks that the parent did not die
 * before that (then it exits 127 and runs nothing), and execs COMMAND
 * (searched in PATH as execvp does). What util-linux's
 * `setpriv --pdeathsig KILL --` does, in a static binary that starts in a
 * third of the time. Failures before the exec are reported on stderr as
 * "sprites-launch: ..." with exit status 127, and nothing else is written.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static void say(const char *text) {
    size_t left = strlen(text);
    while (left > 0) {
        ssize_t done = write(2, text, left);
        if (done <= 0) {
            if (done < 0 && errno == EINTR)
                continue;
            return;
        }
        text += done;
        left -= (size_t)done;
    }
}

int main(int argc, char **argv) {
    pid_t parent = getppid();
    if (argc < 2) {
        say("sprites-launch: no command given\n");
        return 127;
    }
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        say("sprites-launch: set parent death signal failed\n");
        return 127;
    }
    if (getppid() != parent)
        return 127; /* the parent died before the signal was set */
    execvp(argv[1], argv + 1);
    int error = errno;
    say("sprites-launch: failed to execute ");
    say(argv[1]);
    say(": ");
    say(strerror(error));
    say("\n");
    return 127;
}
