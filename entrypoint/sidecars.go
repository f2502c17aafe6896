package entrypoint

import "context"

// startSidecars starts the long-lived parts that run beside Patroni (backup scheduler,
// metrics endpoint).
func (r *runner) startSidecars(ctx context.Context) {}

// prepareVolume inspects the data volume before Patroni starts (package upgrade).
func (r *runner) prepareVolume(ctx context.Context) error { return nil }
