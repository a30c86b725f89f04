package server

import (
	"fmt"
	"reflect"
	"sync/atomic"

	"github.com/presenced/presenced/server/internal/webhook"
	"github.com/presenced/presenced/server/token"
)

// reloadState holds what SIGHUP can change while the server runs. The
// limits are atomics so handlers read them without a lock.
type reloadState struct {
	maxBatch atomic.Int64
	// cfg is the configuration of the last successful reload (or New).
	cfg atomic.Pointer[Config]
}

// Reload applies what can change without a restart: token keys
// (--secret-file is re-read; removing a key revokes its tokens), API
// tokens, --heartbeat-min-gap, --source-rate, --source-burst and
// --max-batch. Removing --secret-file or --api-token-file (keyed to open)
// is refused unless next.AllowOpenReload is set. It returns a line per
// change, and one per changed setting that only takes effect after a
// restart. On error nothing is applied.
// (The log level is the caller's: it owns the logger.)
func (s *Server) Reload(next Config) ([]string, error) {
	if err := next.Validate(); err != nil {
		return nil, err
	}
	prev := *s.rl.cfg.Load()
	var keys *token.Keyring
	if next.SecretFile != "" {
		kr, err := token.LoadKeyring(next.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("--secret-file: %w", err)
		}
		keys = kr
	}
	var api *[][]byte
	if next.APITokenFile != "" {
		toks, err := loadAPITokens(next.APITokenFile)
		if err != nil {
			return nil, fmt.Errorf("--api-token-file: %w", err)
		}
		api = &toks
	}
	var whSecret []byte
	if next.Webhook.SecretFile != "" {
		sec, err := webhook.LoadSecret(next.Webhook.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("--webhook-secret-file: %w", err)
		}
		whSecret = sec
	}
	// Going from keyed to open is refused unless asked for: a config file
	// that lost its secret-file line must not switch authentication off.
	toOpen := func(what, consequence string) error {
		if !next.AllowOpenReload {
			return fmt.Errorf("cannot reload: %s was removed, so %s; restore it, or set --allow-open-reload to mean it", what, consequence)
		}
		s.log.Warn("reload switches to open mode, as --allow-open-reload allows", "removed", what, "consequence", consequence)
		return nil
	}
	if keys == nil && s.keys.Load() != nil {
		if err := toOpen("--secret-file", "anyone could mark anyone online"); err != nil {
			return nil, err
		}
	}
	if api == nil && s.apiTokens.Load() != nil {
		if err := toOpen("--api-token-file", "anyone could read presence"); err != nil {
			return nil, err
		}
	}
	var changes []string
	if old, cur := s.keys.Load(), keys; !sameKeys(old, cur) {
		changes = append(changes, fmt.Sprintf("token keys: %s -> %s", keyIDs(old), keyIDs(cur)))
	}
	s.keys.Store(keys)
	if api != nil || s.apiTokens.Load() != nil {
		changes = append(changes, "api tokens reloaded")
	}
	s.apiTokens.Store(api)
	if next.HeartbeatMinGap != prev.HeartbeatMinGap {
		s.m.SetMinRefreshGap(next.HeartbeatMinGap)
		changes = append(changes, fmt.Sprintf("heartbeat-min-gap: %s -> %s", prev.HeartbeatMinGap, next.HeartbeatMinGap))
	}
	if next.SourceRate != prev.SourceRate || next.SourceBurst != prev.SourceBurst {
		s.src.set(int64(next.SourceRate), int64(next.SourceBurst))
		changes = append(changes, fmt.Sprintf("source-rate/burst: %d/%d -> %d/%d", prev.SourceRate, prev.SourceBurst, next.SourceRate, next.SourceBurst))
	}
	if next.MaxBatch != prev.MaxBatch {
		s.rl.maxBatch.Store(int64(next.MaxBatch))
		changes = append(changes, fmt.Sprintf("max-batch: %d -> %d", prev.MaxBatch, next.MaxBatch))
	}
	if whSecret != nil {
		if h := s.hooks.Load(); h != nil {
			h.SetSecret(whSecret)
			changes = append(changes, "webhook secret reloaded")
		}
	}
	// Everything else needs a restart; say so rather than ignore it.
	applied := prev
	applied.Webhook.SecretFile = next.Webhook.SecretFile
	applied.SecretFile, applied.APITokenFile, applied.AllowOpenReload = next.SecretFile, next.APITokenFile, next.AllowOpenReload
	applied.HeartbeatMinGap, applied.SourceRate, applied.SourceBurst, applied.MaxBatch = next.HeartbeatMinGap, next.SourceRate, next.SourceBurst, next.MaxBatch
	applied.LogLevel, applied.LogFormat, applied.ConfigFile = next.LogLevel, next.LogFormat, next.ConfigFile
	pv, nv := reflect.ValueOf(applied), reflect.ValueOf(next)
	for i := range pv.NumField() {
		if !reflect.DeepEqual(pv.Field(i).Interface(), nv.Field(i).Interface()) {
			changes = append(changes, fmt.Sprintf("%s changed: needs a restart to take effect", pv.Type().Field(i).Name))
		}
	}
	s.rl.cfg.Store(&applied)
	return changes, nil
}

func keyIDs(kr *token.Keyring) string {
	if kr == nil {
		return "[open mode]"
	}
	return fmt.Sprint(kr.KeyIDs())
}

func sameKeys(a, b *token.Keyring) bool {
	return keyIDs(a) == keyIDs(b) && (a == nil) == (b == nil)
}
