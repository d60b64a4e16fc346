# frozen_string_literal: true

module OpsChain
  class MissingGemsError < StandardError; end

  # The repository's Gemfile, used offline: only gems installed in the runner image (opschain-core among them)
  # can be used; asking for others fails naming them all, before anything else runs.
  module Gems
    module_function

    def gemfile(repo_dir = Paths.repo_dir)
      path = ENV.fetch('BUNDLE_GEMFILE', '')
      path.empty? ? File.join(repo_dir, 'Gemfile') : path
    end

    # Activates the Gemfile's gems (Bundler.setup) when the repository has a Gemfile; false when it has none.
    def setup!(repo_dir = Paths.repo_dir)
      path = gemfile(repo_dir)
      return false unless File.file?(path)

      check!(path)
      Bundler.ui = Bundler::UI::Silent.new # no "Resolving dependencies..." in the step's output
      Bundler.setup
      true
    rescue LoadError, StandardError => e
      raise if e.is_a?(MissingGemsError)
      raise unless defined?(Bundler::BundlerError) && e.is_a?(Bundler::BundlerError)

      raise MissingGemsError, "#{path} cannot be used with the gems of this runner image: #{e.message.strip}"
    end

    # Raises MissingGemsError naming every gem the Gemfile asks for that the image does not have.
    def check!(path = gemfile)
      return unless File.file?(path)

      ENV['BUNDLE_GEMFILE'] = path
      require 'bundler'
      missing = missing_gems(path)
      return if missing.empty?

      raise MissingGemsError, "#{path} asks for gems this runner image does not have: #{missing.join(', ')}. " \
                              'Steps run without network access: install them in the image (a RUN line in your ' \
                              "#{Paths.repo_folder}/Dockerfile) or remove them from the Gemfile"
    end

    # The Gemfile's dependencies (for this platform) that no installed gem satisfies, as "name (requirement)".
    def missing_gems(path)
      definition = Bundler::Dsl.evaluate(path, nil, {})
      definition.dependencies.select(&:should_include?).reject do |dependency|
        source = dependency.source
        next true if source && !source.is_a?(Bundler::Source::Rubygems) # path and git gems: Bundler checks them

        Gem::Dependency.new(dependency.name, dependency.requirement).matching_specs(true).any?
      end.map { |dependency| "#{dependency.name} (#{dependency.requirement})" }
    end
  end
end
