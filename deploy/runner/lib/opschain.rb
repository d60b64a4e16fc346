# frozen_string_literal: true

# The opschain library of steprunner's runner image (the gem opschain-core): the action DSL, properties,
# context and child steps of OpsChain's public documentation, for actions.rb files written for OpsChain.
# deploy/runner/README.md describes the API.
require 'json'
require 'rake'
require_relative 'opschain/lazy_yaml'
require_relative 'opschain/version'
require_relative 'opschain/properties'
require_relative 'opschain/toml'
require_relative 'opschain/json_diff'
require_relative 'opschain/step_context'
require_relative 'opschain/step'
require_relative 'opschain/builtin_steps'
require_relative 'opschain/dsl'
require_relative 'opschain/resources'
require_relative 'opschain/gems'
require_relative 'opschain/runner'

# actions.rb runs at the top level: action, resource_type, ref, lazy… are methods of main, as Rake's are.
TOPLEVEL_BINDING.receiver.extend(OpsChain::Dsl)
