// Command presenced is a presence server: UDP and HTTP heartbeats into a
// lock-sharded in-memory table, made durable by a Pebble write-ahead log.
//
//	presenced [serve] [flags]   run the server (see -h)
//	presenced token ...         mint a heartbeat token
//	presenced loadtest ...      run the load generator
//	presenced config [flags]    print the effective configuration
//	presenced repair [flags]    move a damaged --data-dir aside, keep what is readable
//	presenced version           print version, revision, Go version, build time (also --version)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server"
)

// version and buildTime may be set at build time with -ldflags
// "-X main.version=... -X main.buildTime=...": they replace the module
// version and the unknown build time of the binary's build info.
var version, buildTime string

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the process exit status:
// 0 clean, 2 bad usage or configuration, 1 any other failure.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && (len(args[0]) > 0 && args[0][0] != '-' || args[0] == "--version" || args[0] == "-version") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(args, stderr)
	case "token":
		return mintToken(args, stdout, stderr)
	case "loadtest":
		return loadtestCmd(args, stdout, stderr)
	case "config":
		cfg, err := server.LoadConfig(args, os.Getenv, stderr)
		if err != nil {
			return usageFailure(stderr, err)
		}
		server.PrintConfig(stdout, cfg)
		return 0
	case "repair":
		return repair(args, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprint(stdout, server.ReadBuildInfo(version, buildTime))
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "presenced: unknown command %q\n", cmd)
		usage(stderr)
		return 2
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: presenced [serve] [flags]
       presenced token --secret-file F --user U [--room R] [--valid-for D] [--kid K]
       presenced loadtest [flags]
       presenced config [flags]
       presenced repair --data-dir D   (with the node stopped)
       presenced version | --version

serve flags (each also PRESENCED_<FLAG> in the environment, or 'flag = value' in --config):
`)
	server.FlagUsage(w)
}

func usageFailure(stderr io.Writer, err error) int {
	fmt.Fprintln(stderr, "presenced:", err)
	var ue *server.UsageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

func serve(args []string, stderr io.Writer) int {
	cfg, err := server.LoadConfig(args, os.Getenv, stderr)
	if err != nil {
		return usageFailure(stderr, err)
	}
	level := new(slog.LevelVar)
	log := server.NewLogger(stderr, cfg, level)
	srv, err := server.New(cfg, log)
	if err != nil {
		return usageFailure(stderr, err)
	}
	srv.SetBuildInfo(server.ReadBuildInfo(version, buildTime))
	// Signals are caught before Start so a SIGTERM during replay is not fatal.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)
	if err := srv.Start(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	sd := newNotifier(log)
	sd.ready()
	stopWatchdog := sd.watchdog(srv.Alive)
	defer stopWatchdog()
	for s := range sig {
		if s == syscall.SIGHUP {
			reload(srv, args, level, sd, log, stderr)
			continue
		}
		log.Info("signal received, shutting down", "signal", s.String())
		break
	}
	sd.stopping()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Error("unclean shutdown", "err", err)
		return 1
	}
	return 0
}

// repair moves a store the node cannot open (exit 1 naming a damaged file)
// to <data-dir>.damaged-<time> and starts a new one from every record that
// can still be read (persist.Repair). It takes the serve flags, so the same
// --config or environment finds the same --data-dir.
func repair(args []string, stdout, stderr io.Writer) int {
	cfg, err := server.LoadConfig(args, os.Getenv, stderr)
	if err != nil {
		return usageFailure(stderr, err)
	}
	if cfg.DataDir == "" {
		fmt.Fprintln(stderr, "presenced: repair needs --data-dir")
		return 2
	}
	log := server.NewLogger(stderr, cfg, new(slog.LevelVar))
	st, err := persist.Repair(cfg.Persist)
	if err != nil {
		log.Error("cannot repair", "data_dir", cfg.DataDir, "moved_to", st.MovedTo, "err", err)
		return 1
	}
	if st.Unreadable != "" {
		log.Error("nothing could be read from the damaged store; the new store is empty", "err", st.Unreadable)
	}
	fmt.Fprintf(stdout, "damaged store moved to %s\n", st.MovedTo)
	for _, f := range st.Damaged {
		fmt.Fprintf(stdout, "damaged file: %s\n", f)
	}
	fmt.Fprintf(stdout, "kept %d sessions and %d last-seen records in %s (%d unreadable ranges skipped)\n",
		st.Sessions, st.LastSeen, cfg.DataDir, st.Skipped)
	return 0
}

// reload re-reads flags, environment and config file and applies what can
// change without a restart (SIGHUP, systemd ExecReload), logging each change.
func reload(srv *server.Server, args []string, level *slog.LevelVar, sd *notifier, log *slog.Logger, stderr io.Writer) {
	sd.reloading()
	defer sd.ready()
	cfg, err := server.LoadConfig(args, os.Getenv, stderr)
	if err != nil {
		log.Error("reload refused: bad configuration, keeping the running one", "err", err)
		return
	}
	changes, err := srv.Reload(cfg)
	if err != nil {
		log.Error("reload refused, keeping the running configuration", "err", err)
		return
	}
	if l, _ := server.ParseLogLevel(cfg.LogLevel); l != level.Level() {
		changes = append(changes, "log-level: "+level.Level().String()+" -> "+l.String())
		level.Set(l)
	}
	if len(changes) == 0 {
		changes = []string{"nothing changed"}
	}
	for _, c := range changes {
		log.Info("reloaded", "change", c)
	}
}
