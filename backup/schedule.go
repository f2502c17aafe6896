package backup

import "github.com/robfig/cron/v3"

// cronParser accepts the standard 5-field cron syntax and descriptors such as @daily.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ValidateSchedule parses a cron expression.
func ValidateSchedule(expr string) error {
	_, err := cronParser.Parse(expr)
	return err
}
