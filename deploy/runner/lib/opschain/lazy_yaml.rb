# frozen_string_literal: true

# The YAML library (Psych, a C extension with libyaml) loads when it is first used: loaded with the library it was
# 25-40 ms of every step's start, and most steps read no YAML. An actions.rb may still use YAML, Psych or #to_yaml
# without requiring 'yaml', as when the library loaded it: the constants load it by autoload, and the two
# methods Psych adds to Object name Psych, which loads it (Psych's own definitions, the same, then replace these).
unless defined?(::Psych::VERSION)
  autoload :Psych, 'psych'
  autoload :YAML, 'yaml'

  class Object
    def self.yaml_tag(url) = Psych.add_tag(url, self)

    def to_yaml(options = {}) = Psych.dump(self, options)
  end
end
