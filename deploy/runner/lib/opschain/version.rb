# frozen_string_literal: true

module OpsChain
  # The version of the opschain-core gem the runner image installs (a Gemfile naming opschain-core finds it).
  VERSION = '1.0.0'
end
