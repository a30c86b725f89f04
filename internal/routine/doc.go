// Package routine owns the one way presenced starts a long-lived background
// goroutine: through a [Group], which tracks it until it returns so that the
// owner's Close or Stop can wait for all of them.
//
// Concurrency contract: Go may be called from any goroutine, also from a
// goroutine of the same Group, as long as it is not called concurrently
// with or after a Wait that has returned (the sync.WaitGroup rule: a Group
// that is being waited on accepts no new goroutine). Wait and WaitContext
// may be called more than once and from several goroutines. The zero Group
// is ready to use and must not be copied after first use.
//
// Each goroutine has a name: it carries the pprof label "routine" (so a
// goroutine dump or profile tells which one it is), and the names of the
// goroutines still running are what [Group.Running] reports, which
// WaitContext's error names when the wait times out.
//
// A goroutine that panics is not recovered: the panic ends the process as
// any other would (its stack names the function it ran).
//
// It imports only the standard library, so persist (which never imports
// server) and the server packages share it.
package routine
