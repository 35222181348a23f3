package relay_test

import (
	"github.com/relay/relay/relay"
	"github.com/relay/relay/relay/httpapi"
)

func init() { relay.SetTestHandlers(httpapi.Handlers) }
